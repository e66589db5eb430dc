import sys

from streamloc.cli import main

sys.exit(main())
