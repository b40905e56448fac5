from dfk.cli import main

main()
