import sys

from amnet.cli.main import main

sys.exit(main())
