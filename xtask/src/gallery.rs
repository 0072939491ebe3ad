//! `cargo xtask gallery`: every content photo by several paintings, rendered with settings a
//! person would use (coarse to fine) with the Gram loss and with the nearest-neighbour loss,
//! into `docs/images/gallery/` with thumbnails, one grid per loss and `docs/gallery.md` (each
//! cell's time and settings). Finished cells are kept, so an interrupted gallery continues
//! where it stopped (`--force` renders everything again).

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const CONTENTS: [&str; 3] = ["tubingen", "golden_gate", "hoovertowernight"];
const STYLES: [(&str, &str); 4] = [
    ("starry_night", "Vincent van Gogh, The Starry Night, 1889"),
    ("the_scream", "Edvard Munch, The Scream, 1893"),
    ("shipwreck", "J. M. W. Turner, The Shipwreck, 1805"),
    (
        "woman-with-hat-matisse",
        "Henri Matisse, Woman with a Hat, 1905",
    ),
];
/// The settings of every cell (besides the inputs and the output).
const SETTINGS: [&str; 6] = [
    "--scales",
    "192,384",
    "--iterations",
    "200",
    "--threads",
    "0",
];
const THUMB: u32 = 192;
/// The style losses, with the suffix of their cells' names and their grid's title.
const LOSSES: [(&str, &str, &str); 2] = [
    ("gram", "", "Gram matrices (the default)"),
    ("nn", "_nn", "Nearest neighbours (`--style-loss nn`)"),
];

pub(crate) fn gallery(root: &Path, args: &[String]) -> Result<()> {
    let force = args.iter().any(|a| a == "--force");
    if let Some(a) = args.iter().find(|a| *a != "--force") {
        bail!("gallery takes only --force, got {a:?}");
    }
    let images = nst_testkit::images();
    let out = root.join("docs").join("images").join("gallery");
    std::fs::create_dir_all(out.join("thumbs"))?;
    crate::weights::fetch(root, &[])?;
    let mut c = crate::cargo();
    c.args(["build", "--release", "-q", "-p", "nst-cli"]);
    crate::status(c)?;
    let nst = root.join("target").join("release").join("nst");
    let times_path = out.join("times.txt");
    let mut times = read_times(&times_path);
    let total = LOSSES.len() * CONTENTS.len() * STYLES.len();
    let mut k = 0;
    for ((loss, suffix, _), content, (style, _)) in LOSSES.iter().flat_map(|l| {
        CONTENTS
            .iter()
            .flat_map(move |c| STYLES.iter().map(move |s| (l, c, s)))
    }) {
        k += 1;
        let name = format!("{content}_{style}{suffix}");
        let file = out.join(format!("{name}.jpg"));
        if file.exists() && !force && times.iter().any(|(n, _)| *n == name) {
            eprintln!("[{k}/{total}] {name}: done before, kept");
            continue;
        }
        eprintln!("[{k}/{total}] {name}");
        let start = Instant::now();
        let st = Command::new(&nst)
            .arg("render")
            .arg("--content")
            .arg(images.join(format!("{content}.jpg")))
            .arg("--style")
            .arg(images.join(format!("{style}.jpg")))
            .arg("--out")
            .arg(&file)
            .args(SETTINGS)
            .args(["--style-loss", loss, "--jpeg-quality", "90"])
            .env("NST_WEIGHTS", crate::weights::vgg19_path(root))
            .status()
            .context("running nst")?;
        if !st.success() {
            bail!("nst render failed for {name}");
        }
        times.retain(|(n, _)| *n != name);
        times.push((name, start.elapsed().as_secs_f64()));
        write_times(&times_path, &times)?;
    }
    // Thumbnails, the grid and the table.
    let thumb = |src: &Path, dst: &Path| -> Result<image::RgbImage> {
        let img = image::open(src)
            .with_context(|| format!("cannot read {}", src.display()))?
            .thumbnail(THUMB, THUMB)
            .into_rgb8();
        img.save(dst)?;
        Ok(img)
    };
    let mut header = vec![image::RgbImage::from_pixel(
        THUMB,
        THUMB,
        image::Rgb([255, 255, 255]),
    )];
    for (style, _) in STYLES {
        header.push(thumb(
            &images.join(format!("{style}.jpg")),
            &out.join("thumbs").join(format!("{style}.jpg")),
        )?);
    }
    for (_, suffix, _) in LOSSES {
        let mut cells = Vec::new();
        for content in CONTENTS {
            let mut row = vec![thumb(
                &images.join(format!("{content}.jpg")),
                &out.join("thumbs").join(format!("{content}.jpg")),
            )?];
            for (style, _) in STYLES {
                let name = format!("{content}_{style}{suffix}");
                row.push(thumb(
                    &out.join(format!("{name}.jpg")),
                    &out.join("thumbs").join(format!("{name}.jpg")),
                )?);
            }
            cells.push(row);
        }
        let rows: Vec<&Vec<image::RgbImage>> = std::iter::once(&header).chain(&cells).collect();
        grid(&rows).save(out.join(format!("grid{suffix}.jpg")))?;
    }
    write_table(root, &times)?;
    eprintln!("wrote docs/images/gallery/grid.jpg, grid_nn.jpg and docs/gallery.md");
    Ok(())
}

/// Rows of thumbnails on white, each centred in a `THUMB`-wide column.
fn grid(rows: &[&Vec<image::RgbImage>]) -> image::RgbImage {
    let gap = 6;
    let cols = STYLES.len() as u32 + 1;
    let row_h = |row: &[image::RgbImage]| row.iter().map(|i| i.height()).max().unwrap_or(0);
    let height: u32 = rows.iter().map(|r| row_h(r)).sum::<u32>() + gap * (rows.len() as u32 - 1);
    let width = cols * THUMB + gap * (cols - 1);
    let mut grid = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let mut y = 0;
    for row in rows {
        let h = row_h(row);
        for (i, img) in row.iter().enumerate() {
            let x = i as u32 * (THUMB + gap) + (THUMB - img.width()) / 2;
            image::imageops::overlay(
                &mut grid,
                img,
                x as i64,
                (y + (h - img.height()) / 2) as i64,
            );
        }
        y += h + gap;
    }
    grid
}

fn read_times(path: &Path) -> Vec<(String, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, t) = l.split_once(' ')?;
            Some((n.to_string(), t.trim().parse().ok()?))
        })
        .collect()
}

fn write_times(path: &Path, times: &[(String, f64)]) -> Result<()> {
    let text: String = times.iter().map(|(n, t)| format!("{n} {t:.1}\n")).collect();
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn write_table(root: &Path, times: &[(String, f64)]) -> Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut md = String::new();
    md.push_str("# Gallery\n\n");
    md.push_str("Made by `cargo xtask gallery`. Each content photo is rendered in the style of four paintings, with two style losses.\n\n");
    md.push_str(&format!(
        "Every cell uses `nst render --content C --style S {}` with `--style-loss gram` (the default) or `--style-loss nn`: coarse to fine, 200 iterations at 192 px, then 200 at 384 px, with each loss's default objective (for `nn`, its default layers, weight and palette: [objective.md](objective.md#nearest-neighbour-style-loss)). The times are wall-clock seconds on {cores} cores of a {cpu}.\n\n",
        SETTINGS[..4].join(" ")
    ));
    for (_, suffix, title) in LOSSES {
        md.push_str(&format!(
            "### {title}\n\n![{title}: content photos by rows, paintings by columns](images/gallery/grid{suffix}.jpg)\n\n"
        ));
    }
    md.push_str("## Side by side\n\nEach cell: the Gram render, then the nearest-neighbour render, with their times.\n\n");
    md.push_str("| content \\ style |");
    for (s, _) in STYLES {
        md.push_str(&format!(" {s} |"));
    }
    md.push_str("\n|---|");
    for _ in STYLES {
        md.push_str("---|");
    }
    md.push('\n');
    for c in CONTENTS {
        md.push_str(&format!("| {c} |"));
        for (s, _) in STYLES {
            for (i, (_, suffix, _)) in LOSSES.iter().enumerate() {
                let name = format!("{c}_{s}{suffix}");
                let t = times
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or("–".into(), |(_, t)| format!("{t:.0} s"));
                md.push_str(&format!(
                    "{}[![{name}](images/gallery/thumbs/{name}.jpg)](images/gallery/{name}.jpg) {t}",
                    if i == 0 { " " } else { "<br>" }
                ));
            }
            md.push_str(" |");
        }
        md.push('\n');
    }
    md.push_str("\n## Credits\n\nThe inputs are from `../shared/images`.\n\n- Photos: `tubingen.jpg` (Tübingen, the Neckarfront), `golden_gate.jpg` (the Golden Gate Bridge) and `hoovertowernight.jpg` (Hoover Tower at night).\n");
    for (s, credit) in STYLES {
        md.push_str(&format!("- `{s}.jpg`: {credit}.\n"));
    }
    md.push_str("\nTo reproduce the gallery, run `cargo xtask gallery`. It keeps the cells it has already rendered; `--force` renders them all again.\n");
    std::fs::write(root.join("docs").join("gallery.md"), md).context("cannot write docs/gallery.md")
}
