"""``python -m app.batch``: many recorded videos tracked into takes, on every core of this machine.

    python -m app.batch videos/ more/*.mp4 manifest.csv --out takes/     # one take per video
    python -m app.batch videos/ --out takes/ --workers 2                    # again: finished videos are skipped

The modules, in the order a batch runs them:
    inputs    files, folders, globs and CSV manifests -> one ``Job`` per video (its take's stable
              name, its own options), or a ``Rejected`` line naming the problem
    worker    a worker process: one tracker, built once, tracks jobs into takes (crash-safe
              journals, as ``app.live --record``), reporting progress as it goes
    pool      the local process pool: one worker per core by default, each tracker on one thread;
              a worker that dies is replaced and its video tried again
    progress  one display: overall and per worker, frames per second and ETA
    summary   ``summary.csv``: one line per video, finished or not, rewritten whole after each
    cli       the command line
"""
