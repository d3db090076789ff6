from creditnet.cli.main import app

app(prog_name="creditnet")
