"""Data: reading and cleaning corpora, token windows, masking, chat formatting, DataModules."""
