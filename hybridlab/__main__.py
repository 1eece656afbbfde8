import sys

from hybridlab.cli import main

sys.exit(main())
