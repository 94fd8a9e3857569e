"""Dashboard pages, one module each: ``PATH``, ``NAME``, ``layout(**kwargs)`` and
``register_callbacks(app)``; registered with Dash by :func:`sohuprof.dashboards.app.create_app`."""
