from vist2.cli import main

raise SystemExit(main())
