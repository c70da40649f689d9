import sys

from semiseg_caw.cli import run

if __name__ == "__main__":
    sys.argv[0] = "semiseg-caw"  # usage and error lines name the command, not __main__.py
    run()
