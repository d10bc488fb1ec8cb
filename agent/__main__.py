"""``python -m agent`` runs the same CLI as the ``lattice-edge`` console script."""

from agent.cli import main

if __name__ == "__main__":
    main()
