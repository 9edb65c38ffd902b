from services.common.server import run
from services.inference.server import main

# vLLM spawns its engine processes: this guard keeps them from re-running the service.
if __name__ == "__main__":
    run(main)
