import sys

from reason_jax.cli import main

sys.exit(main())
