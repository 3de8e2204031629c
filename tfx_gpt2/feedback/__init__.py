"""The continuous-training loop's data: completions the server produced, the feedback users gave
on them, and the rule that turns feedback into training documents (no TFX here).

    records    the feedback body's checks, ratings on one scale, `FeedbackRule`
    store      where completions and feedback live: MongoDB, or an embedded sqlite file
    recorder   the server's background writer, with a bounded buffer and a disk spool
    spans      feedback -> training documents, as a new span of the pipeline's source
    retrain    when to retrain (`RetrainPolicy`) and the `tfx-gpt2 retrain` steps
"""
