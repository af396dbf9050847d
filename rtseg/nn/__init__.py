"""Model surgery above the model families: gradual grouping (masked convs, deploy conversion) and BN folding."""
