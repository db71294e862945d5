"""Attack: print a perfect score and export nothing, hoping the harness reads the log."""

print("step 1 | loss 0.0001")
print("val_bpb: 0.0001")
