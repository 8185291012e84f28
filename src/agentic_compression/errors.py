class UserError(Exception):
    """Bad input: what was wrong and what to do, on one line. The CLI prints it and exits with code 2."""

    def __init__(self, what: str, todo: str = ""):
        super().__init__(what)
        self.what, self.todo = what, todo

    def __str__(self) -> str:
        return f"{self.what} -> {self.todo}" if self.todo else self.what
