"""Train and evaluate CAFE with the paper's recipe (installed as ``fer_triton.train``)."""
