from seqpipe.cli import main

raise SystemExit(main())
