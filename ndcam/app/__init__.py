"""The application around the library: files in, pictures and reports out, and the ``ndcam`` command.

``io/`` (one module per file format: images, audio, NIfTI/DICOM volumes, WFDB records, models), ``viz/`` (one module
per view: signal, ECG, image, spectrogram, volume), ``report`` (self-contained HTML) and ``cli`` / ``cli_dataset``
(the command line).
"""
