"""`python -m portcullis.cli`, as the tests and the benches run it."""

from portcullis.cli import main

if __name__ == "__main__":
    main()
