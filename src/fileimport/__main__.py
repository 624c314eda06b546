from fileimport.cli import app

app()
