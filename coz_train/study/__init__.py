"""The paper's human study: image and text mean-opinion-score tests and pairwise comparisons, built from
evaluation runs, rated in a browser, stored in SQLite and analysed (`python -m coz_train.study`)."""
