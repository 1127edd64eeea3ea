from rlkd.cli import main

raise SystemExit(main())
