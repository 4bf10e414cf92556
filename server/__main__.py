"""`python -m server [--model PATH|demo] [--host 127.0.0.1] [--port 30000] [any ServerArgs flag]`."""
import sys

if __name__ == "__main__":
    # Imported here, not at the top: spawned children re-import this module and need none of the HTTP stack.
    from server.launch import main

    sys.exit(main())
