"""Drill-Down Lab: the library behind the app (configs, model, data, training, jobs); never imports streamlit."""
