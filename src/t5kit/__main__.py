import sys

from t5kit.cli import main

sys.exit(main())
