from creditnet_devkit.vectors.cli import main

raise SystemExit(main())
