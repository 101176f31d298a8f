"""The built-in demo dataset (used only by preprocessing/00_make_demo_dataset.py and its tests).

Modules, one job each:
    specs     clip attributes (source, pitch, movement, rhythm, dynamics, background) and the plan of clips
    captions  five paraphrases of a clip's attributes
    synth     the audio, synthesized from the attributes with numpy
    names     Clotho-like file names, some spelled differently in the CSV and on disk
    dataset   plans the splits and writes the wavs, CSVs and manifest
"""
