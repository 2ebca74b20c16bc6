#!/usr/bin/env python
"""The chat page: base, base + style and stacked replies side by side (same as the ``wuxia-chat`` command).

    python scripts/chat_ui.py --model outputs/quickstart/stacked [--port 7860] [--preset wuxia]

Needs gradio (``pip install -e .[chat]``). See ``wuxia_lightning/serve/app.py`` for every option.
"""

from __future__ import annotations

import sys

from wuxia_lightning.serve.app import main

if __name__ == "__main__":
    sys.exit(main())
