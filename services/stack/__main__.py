import sys

from services.stack.runner import main

if __name__ == "__main__":
    sys.exit(main())
