"""`python -m udskit` runs the command line."""

import udskit_start

udskit_start.main()
