import sys

from realtime_llm.cli import main

sys.exit(main())
