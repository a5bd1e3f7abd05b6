"""Results in other tools' formats: DICOM SEG/SR, COCO (above the chain, below the jobs)."""
