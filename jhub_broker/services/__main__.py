"""``python -m jhub_broker.services``: start the broker service (the hub does this)."""
from .app import main

if __name__ == "__main__":
    main()
