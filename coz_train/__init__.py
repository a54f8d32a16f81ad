from coz_train.library_logs import quiet_library_notices

quiet_library_notices()  # library log lines a user cannot act on (coz_train/library_logs.py), before any entry point
