"""The pipeline's code, one package per stage; imports point one way, down this list:

    base/        config, paths, errors, file I/O, devices, tables, plots: used by every stage
    data/        audio decoding, Clotho and own-data caption tables, relevance files, the datasets and loaders
    features/    stage 2: log-mels with the baseline's formula, extracted in parallel into HDF5
    text/        stage 3: Sentence-BERT models and the caption-vector file
    (models/)    the encoders and the dual-encoder model, beside utils/
    runs.py      the run directory: its layout, the checkpoint dict, loading a trained run
    run_record.py  a run's config.yaml and run_info.json (versions, options, history of starts and resumes)
    evaluation/  embedding clips and captions, score matrices, metrics, submissions
    training/    main.py's loop: set-up, InfoNCE, resume, DDP
    search/      the Retriever, its index, search.py's modes and the listening page
    pretrained/  stage 4 (PANNs CNN14 transfer) and the import of the released DCASE 2023 weights
    cli.py       the command-line runner every script uses
    demo/        the built-in synthetic dataset
"""
