"""The chat page (``wuxia-chat``): one prompt, the replies of the base, base + style and the stacked model side
by side, from one loaded base whose adapters are switched per column.

``columns`` (which adapters answer, at which scale, streamed) and ``session`` (the JSONL record) need no web
framework; ``page`` builds the Gradio app and ``app`` is the command line. Gradio is the ``chat`` extra,
imported only by ``page``.
"""
