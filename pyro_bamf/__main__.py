from pyro_bamf.cli import main

raise SystemExit(main())
