"""The command lines, one module each, installed as console commands (see setup.cfg).

    lungseg-train-vunet   lungseg.commands.train_vunet   (also ./train_vunet.py)
    lungseg-train-xunet   lungseg.commands.train_xunet   (also ./train_xunet.py)
    lungseg-evaluate      lungseg.commands.evaluate      (also ./evaluate.py)
    lungseg-predict       lungseg.commands.predict
    lungseg-export        lungseg.export

Each module's ``main(argv=None)`` parses the options, runs, and returns the exit status
(0 done, 2 a user error printed as ``error:`` lines, 130 interrupted, 143 SIGTERM). Parsing imports no
Keras or TensorFlow, so ``--help`` and option errors answer at once; the work is imported
after the options are checked.
"""
