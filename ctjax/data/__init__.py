"""Data layer: DICOM series → HU volumes → windowed, fixed-length slice stacks → batches."""
