"""`python -m llm_picker`: the same command as `llm-picker`."""

import sys

from llm_picker.cli import main

sys.exit(main())
