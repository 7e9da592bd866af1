"""python -m examples.var_rename [--preset=quick|paper] [--field=value ...]"""

from examples.var_rename.task import main

if __name__ == "__main__":
    main()
