"""The output folder of a tool that derives a dev-set root from the grocery data
(make_duplicate_set.py, make_boxed_queries.py): refuse a folder holding anything the tool did not
make, create the folder for its images, and link the dataset's image folders in so that the
CSVs' paths resolve. Standard library only; imported from the tools' own folder."""
import os
import sys

LINKED = ["train", "val", "test", "iconic-images-and-descriptions"]


def prepare(out, dataset_dir, own_files, images_dir, digits):
    """Makes `out` ready: it may hold only `own_files`, the linked folders and `images_dir`,
    whose files must be named `<digits digits>...jpg`; returns the images folder's path."""
    out = os.path.abspath(out)
    own = set(own_files) | set(LINKED) | {images_dir}
    foreign = sorted(set(os.listdir(out)) - own) if os.path.isdir(out) else []
    images = os.path.join(out, images_dir)
    if os.path.isdir(images):
        foreign += [f"{images_dir}/{n}" for n in os.listdir(images)
                    if not (n[:digits].isdigit() and n.endswith(".jpg"))]
    if foreign:
        sys.exit(f"{out} holds files this tool did not make ({', '.join(foreign[:5])}); "
                 "choose another --out")
    os.makedirs(images, exist_ok=True)
    for sub in LINKED:
        link = os.path.join(out, sub)
        if not os.path.lexists(link):
            os.symlink(os.path.join(os.path.abspath(dataset_dir), sub), link)
    return images
