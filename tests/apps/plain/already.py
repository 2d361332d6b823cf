"""A Flask application that already uses the middleware: not to be wrapped twice."""

from flask import Flask

from sflow_app.integrations.flask import init_app

app = Flask(__name__)
init_app(app)


@app.get("/")
def index() -> str:
    return "already"
