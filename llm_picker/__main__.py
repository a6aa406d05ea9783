import sys

from llm_picker.cli import main

sys.exit(main())
