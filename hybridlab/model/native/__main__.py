from hybridlab.model.native import main

raise SystemExit(main())
