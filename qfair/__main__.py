from qfair.cli import main

raise SystemExit(main())
