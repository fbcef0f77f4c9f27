"""The record table: its schema, the Recorder that fills it, and the files it lives in.

``schema`` names the columns and metrics, ``recorder`` turns hooks into rows,
``io`` reads saved tables, ``runs`` owns the run-directory layout.
"""
