from scaler.cli import main
import sys

sys.exit(main())
