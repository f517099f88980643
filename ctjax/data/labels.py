"""Label names and orders of the public data sets: the one place they are defined.

Configs (`data.labels`), the data-set adapters, the phantom generator, the tasks and the report
all import these tuples, so a label order can only change here.
"""

from __future__ import annotations

# RSNA 2019 Intracranial Hemorrhage: the challenge's subtype names, `any` first (DrCT2 paper,
# Table 1: 6 labels).
RSNA_LABELS = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid",
               "subdural")
# Row order of the subtypes of one slice in RSNA's stage_2_train.csv.
RSNA_CSV_SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid",
                     "subdural", "any")

# CQ500: the 9 labels of DrCT2's Table 1, in the order of reads.csv; `CQ500_COLUMNS` is the
# reads.csv column stem of each (`R1:ICH` … `R3:MidlineShift`). The paper's fracture label is
# "Calvarial fracture" (Table 1: 181 scans), reads.csv's `CalvarialFracture` column — not its
# `Fracture` column, which also counts the other (facial, skull-base) fractures.
CQ500_LABELS = ("ich", "iph", "ivh", "sdh", "edh", "sah", "fracture", "mass_effect",
                "midline_shift")
CQ500_COLUMNS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "CalvarialFracture", "MassEffect",
                 "MidlineShift")
CQ500_READERS = ("R1", "R2", "R3")
# Every finding column of the real reads.csv (per reader), as the download has them.
CQ500_FINDINGS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left",
                  "BleedLocation-Right", "ChronicBleed", "Fracture", "CalvarialFracture",
                  "OtherFracture", "MassEffect", "MidlineShift")

# Blend-sign paper: the three slice classes of the classification branch.
BLEND_CLASSES = ("non_ich", "normal_ich", "blend_sign")
