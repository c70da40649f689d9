from semiseg_caw.cli import run

if __name__ == "__main__":
    run()
