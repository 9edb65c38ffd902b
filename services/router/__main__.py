from services.common.server import run
from services.router.server import main

if __name__ == "__main__":
    run(main)
