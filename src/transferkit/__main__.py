import sys

from transferkit.cli import main

sys.exit(main())
